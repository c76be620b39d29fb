// Tests for xorb.cc.
