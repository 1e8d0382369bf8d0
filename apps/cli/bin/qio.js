#!/usr/bin/env node
import("../dist/qio.js");
