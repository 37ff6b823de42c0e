# Starts Autobahn|Testsuite's `wstest` from a `pip install --target DIR` copy (Python 2.7).
# Usage: python2 wstest.py DIR [wstest arguments...]
# `site.addsitedir` (not PYTHONPATH) because `zope` is a namespace package set up by a .pth file.
import site
import sys

site.addsitedir(sys.argv.pop(1))
sys.argv[0] = "wstest"

from autobahntestsuite.wstest import run  # noqa: E402

run()
