; Functions for the refactor action (Go). Go has no async functions, so nothing is
; captured as @async.
;
; @function   a definition; @name its name; @parameters its parameter list.
; @method     a definition that is a method whatever encloses it (Go's methods
;             have a receiver instead of a containing type).

(function_declaration
  name: (identifier) @name
  parameters: (parameter_list) @parameters) @function

(method_declaration
  name: (field_identifier) @name
  parameters: (parameter_list) @parameters) @method
