"""Helpers shared by the tests, the benchmarks and the tools: paths, fakes, stubs and seeded model builders."""
