// Seeded random-mutation test of the xorb and shard parsers.
