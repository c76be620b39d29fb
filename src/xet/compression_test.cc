// Tests for compression.cc.
