#!/bin/sh
# hang.sh - test labeler: reads a pair and never answers (exec, so that
# stopping it stops the sleep too).
read -r line
exec sleep 30
