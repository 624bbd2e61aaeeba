; Functions for the refactor action (Rust).
;
; @function   a definition; @name its name; @parameters its parameter list.
; @async      present when the definition is async.
; @container  an impl or trait: functions inside one are methods.
;
; Several patterns may match one definition; their captures add up.

(function_item
  (function_modifiers "async" @async)?
  name: (identifier) @name
  parameters: (parameters) @parameters) @function

(impl_item) @container
(trait_item) @container
