"""Tests of the chaos package: history records and the linearizability checker."""
