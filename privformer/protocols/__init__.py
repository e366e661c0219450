"""The private-inference protocols: ``stip`` (permutation obfuscation); NEXUS, CipherPrune next."""
