package cli

import "fmt"

// usageErr is bad input from the user: one line naming the bad token, exit code 2.
func usageErr(format string, a ...any) error {
	return &ExitError{Code: 2, Err: fmt.Errorf(format, a...)}
}

// badInput wraps a parse error as a usage error.
func badInput(err error) error {
	if err == nil {
		return nil
	}
	return &ExitError{Code: 2, Err: err}
}
