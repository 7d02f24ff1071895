import pytest

from difflab_core.errors import DifflabError, reraise_as


class PackageError(ValueError):
    pass


class SubError(DifflabError):
    pass


def test_reraise_as_converts_core_errors_and_keeps_others():
    with (
        pytest.raises(PackageError, match=r"^run/config.json: bad fingerprint$") as info,
        reraise_as(PackageError, "run/config.json"),
    ):
        raise DifflabError("bad fingerprint")
    assert isinstance(info.value.__cause__, DifflabError)
    with pytest.raises(PackageError, match=r"^plain$"), reraise_as(PackageError):
        raise DifflabError("plain")
    with pytest.raises(KeyError), reraise_as(PackageError):
        raise KeyError("not a core error")
    original = SubError("already the package's type")
    with pytest.raises(SubError) as kept, reraise_as(SubError, "where"):
        raise original
    assert kept.value is original
