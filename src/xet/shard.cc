// Filled in by the shard work; see include/bucketfs/xet/shard.h.
