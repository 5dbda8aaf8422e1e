#!/bin/sh
# always_a.sh - test labeler (tests/test_oracle.c, tests/test_auto.sh):
# reads one pair per line and prefers image A every time.
while read -r line; do
    echo A
done
