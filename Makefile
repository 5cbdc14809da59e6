# haven — the two set-up commands are `make demo` and `make test`; both install what they need.
SWIFT ?= swift
HAVEN := .build/debug/haven

.PHONY: all deps build demo test bench reliability fuzz-long schema format lint clean

all: build

deps:
	@scripts/ensure-deps

build: deps
	$(SWIFT) build --product haven

## The main job on the built-in simulated pool.
demo: build
	scripts/demo.sh

## Every test: unit, fixtures, schema referee, end-to-end through the binary.
test: deps
	$(SWIFT) build
	$(SWIFT) test --disable-xctest

## The reliability harness (docs/RELIABILITY.md): kill -9 sweep, fault matrix, libFuzzer targets,
## the ownership property test with many seeds, secrets scan. Not part of `make test` (it takes
## most of half an hour); prints a summary and writes reliability-results.json.
reliability: deps
	$(SWIFT) build --product haven
	nice python3 scripts/reliability/run.py

## The long fuzz run (not in `make reliability`): up to 1,000,000 executions per target, at most
## FUZZ_LONG_SECONDS each; the figures go to reliability-results.json and docs/RELIABILITY.md.
FUZZ_LONG_SECONDS ?= 7200
fuzz-long: deps
	$(SWIFT) build --product haven
	RELIABILITY_FUZZ_SECONDS=$(FUZZ_LONG_SECONDS) RELIABILITY_FUZZ_RUNS=1000000 nice python3 scripts/reliability/run.py --only fuzz

## Benchmarks (release build); prints ratios measured in the same run.
bench:
	@scripts/ensure-deps --bench
	$(SWIFT) build -c release --product haven
	$(SWIFT) build -c release --product haven-bench
	.build/release/haven-bench

## Regenerate the JSON Schema and the reference page from the field list.
schema: build
	$(HAVEN) schema > manifests/haven.schema.json
	$(HAVEN) schema --format markdown > docs/spec.md

format:
	$(SWIFT) format --in-place --recursive Sources Tests Package.swift

lint:
	$(SWIFT) format lint --recursive Sources Tests Package.swift

clean:
	rm -rf .build .build-fuzz .demo .bench .reliability bench-results.json reliability-results.json
