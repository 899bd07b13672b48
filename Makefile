.PHONY: help test test-fast style smoke

help:  ## list targets
	@grep -E '^[a-z-]+:.*##' Makefile | sed 's/:.*##/ —/'

test:  ## the whole suite, as CI runs it
	python -m pytest -q --durations=15

test-fast:  ## the default tier only (no subprocess sweeps, browser, Ray)
	python -m pytest -q -m 'not slow'

style:  ## lint and format
	ruff check --fix genart tests && ruff format genart tests

smoke:  ## a tiny-model render, seconds on any CPU
	python -m genart generator=vqgan_tiny guide=clip_tiny steps=20 'size=[128,64]'
