#!/usr/bin/env node
import("../dist/qiotests.js");
