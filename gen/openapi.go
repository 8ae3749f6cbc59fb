// Package gen holds the code generated from proto/ and the merged OpenAPI document.
package gen

import _ "embed"

// OpenAPI is the OpenAPI 3 document for every REST route, served at
// /openapi.json (made by make generate: protoc-gen-openapiv2, then tools/openapi).
//
//go:embed openapi/openapi.json
var OpenAPI []byte
