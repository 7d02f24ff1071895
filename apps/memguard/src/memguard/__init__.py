"""memguard: audit generators for memorization and generate with mitigation."""
