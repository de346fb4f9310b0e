#!/bin/sh
# A build that fails on purpose: it prints some output, then exits 3.
echo "checking the answer..."
answer=41
echo "expected 42, got $answer" >&2
echo "FAILED: the answer is wrong"
exit 3
