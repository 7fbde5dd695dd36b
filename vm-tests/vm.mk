# Install, package and VM-test targets; included by the top-level Makefile.
#
#   make install     binaries, unit, /etc/interlock defaults (PREFIX=/usr, DESTDIR=)
#   make deb         bin/interlock_VERSION_amd64.deb (dpkg-deb)
#   make vm-image    the Debian 12 and 13 guests (debootstrap), cached in VM_CACHE
#   make vm-test     boot the Debian 12 guest under QEMU (bpf LSM on), install
#                    the .deb, tag a unit, check decisions, audit, fail-closed
#                    and the LSM refusals; boot the Debian 13 guest (6.12,
#                    PostgreSQL 17) and check that a CREATEROLE admin drops
#                    each session's role (vm-test-trixie); then boot Debian
#                    11's 5.10 kernel (below the floor) and check that
#                    interlockd refuses to start
.PHONY: install deb vm-image vm-test vm-test-bookworm vm-test-trixie vm-unit-verify

PREFIX  ?= /usr
DESTDIR ?=
VM_CACHE ?= /var/cache/interlock-vm
# An image is rebuilt when any file that goes into it, or its suite, changes.
VM_IMAGE_INPUTS := vm-tests/build-image.sh vm-tests/provision.sh vm-tests/vm-run vm-tests/interlock-vm-run.service
vm_image_key = $(shell { cat $(VM_IMAGE_INPUTS); echo $(1); } | sha256sum | cut -c1-16)
VM_IMAGE = $(VM_CACHE)/debian12-$(call vm_image_key,bookworm)
VM_IMAGE_TRIXIE = $(VM_CACHE)/debian13-$(call vm_image_key,trixie)
# Debian versions must start with a digit: 0.0~git<date>.<commit>.
DEB_VERSION ?= $(shell git log -1 --format='0.0~git%cd.%h' --date=format:%Y%m%d 2>/dev/null || echo 0.0)
DEB = $(BIN)/interlock_$(DEB_VERSION)_amd64.deb

install: build
	install -D -m 0755 $(BIN)/interlockd $(DESTDIR)$(PREFIX)/bin/interlockd
	install -D -m 0755 $(BIN)/interlock $(DESTDIR)$(PREFIX)/bin/interlock
	install -d $(DESTDIR)/lib/systemd/system
	sed 's#/usr/bin/#$(PREFIX)/bin/#g' packaging/interlock.service >$(DESTDIR)/lib/systemd/system/interlock.service
	chmod 0644 $(DESTDIR)/lib/systemd/system/interlock.service
	install -d -m 0755 $(DESTDIR)/etc/interlock
	@# Never overwrite an operator's configuration.
	test -e $(DESTDIR)/etc/interlock/interlockd.yaml || install -m 0644 packaging/interlockd.yaml $(DESTDIR)/etc/interlock/interlockd.yaml
	test -e $(DESTDIR)/etc/interlock/policy.yaml || install -m 0644 policy/default.yaml $(DESTDIR)/etc/interlock/policy.yaml
	if [ -z "$(DESTDIR)" ] && [ -d /run/systemd/system ]; then systemctl daemon-reload; fi

deb: build
	rm -rf $(BIN)/deb && mkdir -p $(BIN)/deb/DEBIAN
	$(MAKE) --no-print-directory install DESTDIR=$(CURDIR)/$(BIN)/deb PREFIX=/usr
	sed 's/@VERSION@/$(DEB_VERSION)/' packaging/debian/control.in >$(BIN)/deb/DEBIAN/control
	install -m 0644 packaging/debian/conffiles $(BIN)/deb/DEBIAN/conffiles
	install -m 0755 packaging/debian/postinst packaging/debian/prerm packaging/debian/postrm $(BIN)/deb/DEBIAN/
	dpkg-deb --root-owner-group -Zgzip --build $(BIN)/deb $(DEB)
	@echo "built $(DEB)"

# vm_build DIR SUITE NAME: build the image into DIR unless it is cached; a
# new build removes the images of older inputs (NAME-*), 3 GB each.
define vm_build
	@mkdir -p $(VM_CACHE)
	@flock $(VM_CACHE)/.lock sh -c 'test -s $(1)/rootfs.img || { \
	  echo "vm-image: building $(1) (debootstrap $(2); several minutes, cached afterwards)"; \
	  vm-tests/build-image.sh $(1) $(2) && \
	  for old in $(VM_CACHE)/$(3)-*; do [ "$$old" = "$(1)" ] || rm -rf "$$old"; done; }'
	@echo "vm-image: $(1)"
endef

vm-image: $(VM_IMAGE)/rootfs.img $(VM_IMAGE_TRIXIE)/rootfs.img
$(VM_IMAGE)/rootfs.img:
	$(call vm_build,$(VM_IMAGE),bookworm,debian12)
$(VM_IMAGE_TRIXIE)/rootfs.img:
	$(call vm_build,$(VM_IMAGE_TRIXIE),trixie,debian13)

vm-test: vm-test-bookworm vm-test-trixie
	vm-tests/floor-test.sh $(VM_CACHE) $(BIN)/interlockd
vm-test-bookworm: deb $(VM_IMAGE)/rootfs.img
	vm-tests/run-vm.sh $(VM_IMAGE) $(DEB) vm-tests/guest-test.sh
vm-test-trixie: deb $(VM_IMAGE_TRIXIE)/rootfs.img
	vm-tests/run-vm.sh $(VM_IMAGE_TRIXIE) $(DEB) vm-tests/guest-test-trixie.sh
