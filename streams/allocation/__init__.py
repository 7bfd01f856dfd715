"""GPU cost allocation: the rule (`rule`) and the stateful allocator that applies it
(`allocator`)."""
