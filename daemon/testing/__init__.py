"""Test doubles and throwaway infrastructure shipped with the package (fakes, emulators, clusters)."""
