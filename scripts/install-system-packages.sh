#!/usr/bin/env bash
# Debian packages the service and its tests need, installed when missing (idempotent, quiet;
# needs root and apt-get; CI runs as root). Never downloads anything but Debian packages.
#   install-system-packages.sh service   bubblewrap: every job's sandbox (deployments/runtime/sandbox.py)
#   install-system-packages.sh test      the above, plus headless Chromium and its driver for the
#                                        Prefect UI test (tests/integration/test_prefect_ui.py)
set -u
want=(bubblewrap)
have() { [ -x /usr/bin/bwrap ]; }
if [ "${1:-service}" = test ]; then
    want+=(chromium chromium-driver fonts-liberation)
    have() { [ -x /usr/bin/bwrap ] && [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; }
fi
if have; then
    exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "install-system-packages: not root or no apt-get; install ${want[*]} yourself" \
        "(without bubblewrap, jobs refuse to start unless DSPY_SERVICE_SANDBOX=off)" >&2
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${want[@]}"; } \
    >/tmp/install-system-packages.log 2>&1; then
    echo "install-system-packages: apt-get failed (see /tmp/install-system-packages.log)" >&2
fi
exit 0
