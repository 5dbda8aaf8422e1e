#!/bin/sh
# garbage.sh - test labeler: answers A for the first two pairs, then a
# line outside the protocol (with an escape sequence that error messages
# must not pass through to the terminal).
n=0
while read -r line; do
    n=$((n + 1))
    if [ "$n" -le 2 ]; then echo A; else printf 'maybe\033[31m red\n'; fi
done
