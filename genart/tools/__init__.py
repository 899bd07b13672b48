"""Tools around the pipeline: the benchmark and its plain loop, the sweep gallery and summary,
presets. They read run dirs and call the pipeline; the pipeline never imports them."""
