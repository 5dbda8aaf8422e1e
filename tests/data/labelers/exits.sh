#!/bin/sh
# exits.sh - test labeler: answers one pair with B, then exits with
# status 3 on the next one without a word.
read -r line && echo B
read -r line
exit 3
