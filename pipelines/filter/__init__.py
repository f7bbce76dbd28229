"""Filter stage: language ID and Gopher quality/repetition rules over ingested web records."""
