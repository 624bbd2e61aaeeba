; Functions for the refactor action (Python).
;
; @function   a definition; @name its name; @parameters its parameter list.
; @wrapper    a node that encloses the definition and belongs to it (decorators):
;             a rewrite replaces it whole.
; @async      present when the definition is async.
; @container  a class: functions directly inside one are methods.
;
; Several patterns may match one definition; their captures add up.

; `async def` is a function_definition with an `async` keyword.
(function_definition
  "async"? @async
  name: (identifier) @name
  parameters: (parameters) @parameters) @function

(decorated_definition
  definition: (function_definition
    name: (identifier) @name) @function) @wrapper

(class_definition) @container
