// See README.md: only parsed, never used.
#pragma once
