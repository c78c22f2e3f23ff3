#!/usr/bin/env bash
# Debian's headless Chromium and its driver for the Prefect UI test (tests/integration/test_prefect_ui.py).
# Idempotent and quiet; needs root and apt-get (CI runs as root). Never downloads a browser build.
set -u
if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
    exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "install-test-browser: not root or no apt-get; the Prefect UI test will be skipped" >&2
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium chromium-driver fonts-liberation; } \
    >/tmp/install-test-browser.log 2>&1; then
    echo "install-test-browser: apt-get failed (see /tmp/install-test-browser.log); the Prefect UI test will be skipped" >&2
fi
exit 0
