package main

import (
	"fmt"
	"regexp"
	"strconv"
	"time"
)

// sinceDays splits a leading day count off a --since value ("1d", "7d12h"):
// operators think of audit windows in days, and time.ParseDuration stops
// at hours.
var sinceDays = regexp.MustCompile(`^(\d+)d(.*)$`)

// parseSince parses a --since value: a Go duration (90m, 36h) optionally
// preceded by whole days (1d, 7d, 2d12h).
func parseSince(s string) (time.Duration, error) {
	var days time.Duration
	rest := s
	if m := sinceDays.FindStringSubmatch(s); m != nil {
		n, err := strconv.Atoi(m[1])
		if err != nil || n > 100*365 {
			return 0, fmt.Errorf("--since %q: too many days", s)
		}
		days, rest = time.Duration(n)*24*time.Hour, m[2]
		if rest == "" {
			return days, nil
		}
	}
	d, err := time.ParseDuration(rest)
	if err != nil || d < 0 {
		return 0, fmt.Errorf("--since %q: not a duration (use 90m, 36h, 1d or 7d12h)", s)
	}
	return days + d, nil
}

// sinceFlag is a --since flag that accepts days.
type sinceFlag time.Duration

// String renders the value as a Go duration.
func (f *sinceFlag) String() string { return time.Duration(*f).String() }

// Set parses a --since value.
func (f *sinceFlag) Set(s string) error {
	d, err := parseSince(s)
	*f = sinceFlag(d)
	return err
}

// Type names the value in help.
func (f *sinceFlag) Type() string { return "duration" }
