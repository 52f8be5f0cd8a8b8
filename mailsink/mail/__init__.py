"""Message model: parsing raw bytes, envelope-vs-header findings, address checks."""
