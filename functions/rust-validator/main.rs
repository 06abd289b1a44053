fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn violation(field: &str, rule: &str, message: String) -> Value {
    json!({"field": field, "rule": rule, "message": message})
}

fn check(field: &str, value: Option<&Value>, rule: &Value, errors: &mut Vec<Value>) {
    let value = match value {
        Some(value) if !value.is_null() => value,
        _ => {
            if rule["required"].as_bool().unwrap_or(false) {
                errors.push(violation(field, "required", format!("{} is required", field)));
            }
            return;
        }
    };
    if let Some(expected) = rule["type"].as_str() {
        let actual = type_name(value);
        let matches = actual == expected || (expected == "number" && actual == "integer");
        if !matches {
            errors.push(violation(field, "type", format!("{} must be {}, not {}", field, expected, actual)));
            return;
        }
    }
    if let Some(number) = value.as_f64() {
        if let Some(min) = rule["min"].as_f64() {
            if number < min {
                errors.push(violation(field, "min", format!("{} must be at least {}", field, min)));
            }
        }
        if let Some(max) = rule["max"].as_f64() {
            if number > max {
                errors.push(violation(field, "max", format!("{} must be at most {}", field, max)));
            }
        }
    }
    let length = match value {
        Value::String(s) => Some(s.chars().count() as u64),
        Value::Array(a) => Some(a.len() as u64),
        _ => None,
    };
    if let Some(length) = length {
        if let Some(min) = rule["min_length"].as_u64() {
            if length < min {
                errors.push(violation(field, "min_length", format!("{} must have at least {} items or characters", field, min)));
            }
        }
        if let Some(max) = rule["max_length"].as_u64() {
            if length > max {
                errors.push(violation(field, "max_length", format!("{} must have at most {} items or characters", field, max)));
            }
        }
    }
}

fn handler(params: Value, _context: Value) -> Result<Value, String> {
    let data = params["data"].as_object().ok_or("data must be an object")?;
    let rules = params["rules"].as_object().ok_or("rules must be an object")?;
    let mut errors = Vec::new();
    for (field, rule) in rules {
        check(field, data.get(field), rule, &mut errors);
    }
    Ok(json!({"valid": errors.is_empty(), "errors": errors}))
}
