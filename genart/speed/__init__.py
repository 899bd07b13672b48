"""Speed internals: precision casts, a faster ViT and colour jitter, crop resampling, the
decoder fast path. The pipeline works without them; they only make its step cheaper. Those that
reach into a library's internals apply only where `guard` finds the versions they were tested on."""
