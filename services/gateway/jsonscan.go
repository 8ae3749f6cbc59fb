package gateway

import (
	"encoding/json"
	"errors"
	"fmt"
)

// A small scanner for the JSON protojson writes, so that withEmptyLists can
// split objects and arrays without encoding/json's token decoder (which
// allocated for every token and cost ~7× the protojson encoding itself on
// a read response). It expects valid JSON, as protojson's output is; on
// anything else it returns an error and the caller keeps protojson's bytes.

var errScan = errors.New("invalid JSON")

func skipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// scanString returns the index just past the string starting at b[i] == '"',
// and whether it holds an escape.
func scanString(b []byte, i int) (int, bool, error) {
	escaped := false
	for j := i + 1; j < len(b); j++ {
		switch b[j] {
		case '\\':
			escaped = true
			j++
		case '"':
			return j + 1, escaped, nil
		}
	}
	return 0, false, errScan
}

// scanValue returns the index just past the value starting at b[i].
func scanValue(b []byte, i int) (int, error) {
	if i >= len(b) {
		return 0, errScan
	}
	switch b[i] {
	case '"':
		end, _, err := scanString(b, i)
		return end, err
	case '{', '[':
		depth := 0
		for j := i; j < len(b); j++ {
			switch b[j] {
			case '"':
				end, _, err := scanString(b, j)
				if err != nil {
					return 0, err
				}
				j = end - 1
			case '{', '[':
				depth++
			case '}', ']':
				if depth--; depth == 0 {
					return j + 1, nil
				}
			}
		}
		return 0, errScan
	}
	j := i
	for j < len(b) && b[j] != ',' && b[j] != '}' && b[j] != ']' && b[j] != ' ' && b[j] != '\t' && b[j] != '\n' && b[j] != '\r' {
		j++
	}
	if j == i {
		return 0, errScan
	}
	return j, nil
}

// objectMembers splits a JSON object into its members, in order.
func objectMembers(b []byte) ([]member, error) {
	return appendObjectMembers(make([]member, 0, 8), b)
}

// appendObjectMembers appends the members of the JSON object b to out.
func appendObjectMembers(out []member, b []byte) ([]member, error) {
	i := skipSpace(b, 0)
	if i >= len(b) || b[i] != '{' {
		return nil, fmt.Errorf("not a JSON object")
	}
	i = skipSpace(b, i+1)
	if i < len(b) && b[i] == '}' {
		return out, trailing(b, i+1)
	}
	for {
		if i >= len(b) || b[i] != '"' {
			return nil, errScan
		}
		end, escaped, err := scanString(b, i)
		if err != nil {
			return nil, err
		}
		var name string
		if escaped {
			if err := json.Unmarshal(b[i:end], &name); err != nil {
				return nil, err
			}
		} else {
			name = string(b[i+1 : end-1])
		}
		i = skipSpace(b, end)
		if i >= len(b) || b[i] != ':' {
			return nil, errScan
		}
		i = skipSpace(b, i+1)
		vend, err := scanValue(b, i)
		if err != nil {
			return nil, err
		}
		out = append(out, member{name: name, raw: b[i:vend]})
		i = skipSpace(b, vend)
		if i < len(b) && b[i] == ',' {
			i = skipSpace(b, i+1)
			continue
		}
		if i < len(b) && b[i] == '}' {
			return out, trailing(b, i+1)
		}
		return nil, errScan
	}
}

// arrayElems splits a JSON array into its elements, in order.
func arrayElems(b []byte) ([]json.RawMessage, error) {
	i := skipSpace(b, 0)
	if i >= len(b) || b[i] != '[' {
		return nil, fmt.Errorf("not a JSON array")
	}
	var out []json.RawMessage
	i = skipSpace(b, i+1)
	if i < len(b) && b[i] == ']' {
		return out, trailing(b, i+1)
	}
	for {
		end, err := scanValue(b, i)
		if err != nil {
			return nil, err
		}
		out = append(out, b[i:end])
		i = skipSpace(b, end)
		if i < len(b) && b[i] == ',' {
			i = skipSpace(b, i+1)
			continue
		}
		if i < len(b) && b[i] == ']' {
			return out, trailing(b, i+1)
		}
		return nil, errScan
	}
}

func trailing(b []byte, i int) error {
	if skipSpace(b, i) != len(b) {
		return errScan
	}
	return nil
}

// appendName appends name as a JSON string: as it is when it needs no
// escaping (field names always), else as encoding/json writes it.
func appendName(out []byte, name string) []byte {
	for i := 0; i < len(name); i++ {
		if c := name[i]; c < 0x20 || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' || c >= 0x80 {
			k, _ := json.Marshal(name)
			return append(out, k...)
		}
	}
	out = append(out, '"')
	out = append(out, name...)
	return append(out, '"')
}
