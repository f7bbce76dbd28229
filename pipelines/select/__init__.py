"""Select stage: a DCLM-style quality classifier (curated text vs raw web) keeps the best web records."""
