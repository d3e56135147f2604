"""OSTree, both directions (layer 3): export (gitree commits to OSTree repositories, byte-identical to
`ostree commit`), importing (OSTree commit chains into gitree), signing (GPG signatures of commits and summaries).
The OSTree format itself is gitree_compat (compat/), below everything."""
