"""Web-data curation for Llama 3 pre-training (paper section 3.1)."""
