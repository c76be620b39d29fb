// Tests for shard.cc.
