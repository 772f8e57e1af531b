"""Keyword-spotting networks: the streaming audio encoder."""
