#!/usr/bin/env node
import("../dist/qimg.js");
