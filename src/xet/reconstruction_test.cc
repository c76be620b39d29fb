// Tests for reconstruction.cc.
