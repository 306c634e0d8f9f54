import pytest

# Every scenario boots a VM: mark them so `-m "not vm"` runs only the fast tests.
def pytest_collection_modifyitems(items):
    for item in items:
        if "/scenarios/" in str(item.fspath):
            item.add_marker(pytest.mark.vm)
