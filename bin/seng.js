#!/usr/bin/env node
// Entry point of the `seng` command: runs the compiled CLI (npm install builds it).
import "../dist/src/cli/main.js";
