"""proxyd's tests; a package so that ``from tests.builders import ...`` works."""
