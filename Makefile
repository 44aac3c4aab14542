# edgeagent: the single entry point for building, testing and demos.
# `make help` lists the targets.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: help demo test check lint fmt dev debs tender tender-asan images fuzz bench clean host-image host-image-xen host-image-check xen-testbed

help:
	@echo "make demo    - signed registry + agent on this machine: pull, boot, OTA update, rollback"
	@echo "make test    - install what is needed, build the C parts, run the whole test suite"
	@echo "make check   - lint (ruff, mypy) + test"
	@echo "make bench   - run the benchmarks, write bench/results/ and print the tables"
	@echo "make tender  - build host-os/tender/edge-tender"
	@echo "make images  - build every image recipe into image-recipes/out/"
	@echo "make host-image-xen - the host image with Xen (dom0 = this host OS) into host-os/out-xen/"
	@echo "make xen-testbed - Xen 4.17 + PV dom0 test bed from Debian packages (host-os/xen-testbed/)"
	@echo "make fuzz    - longer fuzz run of the tender's ELF/manifest parser"
	@echo "make clean   - remove build outputs (keeps .venv)"

debs:
	@sh scripts/ensure-debs

$(STAMP): pyproject.toml
	@echo "==> creating $(VENV) and installing edgeagent[test] into it"
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install -q --upgrade pip
	@$(PY) -m pip install -q -e '.[test]'
	@touch $@

dev: $(STAMP)

tender: debs
	@echo "==> building edge-tender"
	@$(MAKE) -s -C host-os/tender

tender-asan: debs
	@$(MAKE) -s -C host-os/tender asan

images: dev
	@echo "==> building image recipes"
	@$(MAKE) -s -C image-recipes EDGEAGENT=$(abspath $(VENV)/bin/edgeagent)

# The host OS disk image (host-os/recipe.toml -> host-os/out/disk.img; docs/host-os.md).
host-image: dev tender
	@echo "==> building the host OS image"
	@$(PY) -m edgeagent.hostos.build

# The same recipe with image.hypervisor = "xen": Xen boots first, this host OS is dom0.
host-image-xen: dev tender
	@echo "==> building the host OS image, Xen variant (host-os/out-xen/)"
	@$(PY) -m edgeagent.hostos.build --hypervisor xen --out host-os/out-xen

host-image-check: dev
	@$(PY) -m edgeagent.hostos.build --check

# The Xen test bed (Debian's Xen + kernel + a dom0 initramfs; host-os/xen-testbed/README.md).
xen-testbed: dev
	@echo "==> building the Xen test bed"
	@$(PY) -m edgeagent.hostos.xen_testbed

fuzz: debs
	@$(MAKE) -s -C host-os/tender fuzz FUZZ_SECONDS=$${FUZZ_SECONDS:-300}

test: debs dev tender images xen-testbed
	@echo "==> running tests"
	@if [ ! -w /dev/kvm ]; then echo "NOTE: /dev/kvm missing or not writable: KVM tests will be skipped"; fi
	@$(MAKE) -s -C host-os/tender check
	@$(VENV)/bin/pytest $(PYTEST_ARGS)

lint: dev
	@$(VENV)/bin/ruff check edgeagent tests bench scripts
	@$(VENV)/bin/ruff format --check edgeagent tests bench scripts
	@$(VENV)/bin/mypy

fmt: dev
	@$(VENV)/bin/ruff format edgeagent tests bench scripts
	@$(VENV)/bin/ruff check --fix edgeagent tests bench scripts

check: lint test

bench: debs dev tender images
	@$(PY) bench/run.py

demo: debs dev tender images
	@$(PY) scripts/demo.py

clean:
	@$(MAKE) -s -C host-os/tender clean || true
	@$(MAKE) -s -C image-recipes clean || true
	@rm -rf demo/ build/ *.egg-info
