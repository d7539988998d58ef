"""Tests of zoo.hub: safe checkpoint reading, conversion, Hub format."""
