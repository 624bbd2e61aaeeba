; Functions for the refactor action (C). C has no async functions and no methods.
;
; @function   a definition; @name its name; @parameters its parameter list.

(function_definition
  declarator: (function_declarator
    declarator: (identifier) @name
    parameters: (parameter_list) @parameters)) @function

; `char *name(...)`: the function declarator sits inside a pointer declarator.
(function_definition
  declarator: (pointer_declarator
    declarator: (function_declarator
      declarator: (identifier) @name
      parameters: (parameter_list) @parameters))) @function
