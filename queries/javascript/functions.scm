; Functions for the refactor action (JavaScript; TypeScript inherits them).
;
; @function   a definition; @name its name; @parameters its parameter list.
; @wrapper    a node that encloses the definition and belongs to it: the
;             `const f = ...;` around an arrow function. A rewrite replaces it whole.
; @async      present when the definition is async.
; @container  a class: functions inside one are methods.
;
; Several patterns may match one definition; their captures add up.

(function_declaration
  "async"? @async
  name: (identifier) @name
  parameters: (formal_parameters) @parameters) @function

(generator_function_declaration
  "async"? @async
  name: (identifier) @name
  parameters: (formal_parameters) @parameters) @function

(method_definition
  "async"? @async
  name: (_) @name
  parameters: (formal_parameters) @parameters) @function

(lexical_declaration
  (variable_declarator
    name: (identifier) @name
    value: (arrow_function
      "async"? @async
      parameters: (formal_parameters) @parameters) @function)) @wrapper

(lexical_declaration
  (variable_declarator
    name: (identifier) @name
    value: (arrow_function
      "async"? @async
      parameter: (identifier) @parameters) @function)) @wrapper

(class_declaration) @container
(class) @container
