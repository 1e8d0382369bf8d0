#!/usr/bin/env node
import("../dist/qnbd.js");
