"""One compilation cache for the whole test session, apart from the user's own.

Every sweep the tests start (in this process or as a subprocess of the CLI) compiles its
programs into it once; later tests of the same shapes load them instead.
"""

import os

import pytest

from sweep import compilation


@pytest.fixture(scope="session", autouse=True)
def session_compilation_cache(tmp_path_factory):
  os.environ[compilation.CACHE_VARIABLE] = str(tmp_path_factory.mktemp("compilation-cache"))
  compilation.enable_cache()
